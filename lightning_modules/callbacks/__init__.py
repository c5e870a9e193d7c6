from .run_metadata import RunMetadata
from .sample_logger import SampleLogger
from .summary import SummaryWriter

__all__ = ["RunMetadata", "SampleLogger", "SummaryWriter"]
