"""Speed switches run on CPU and leave the maths unchanged; the profiler debug config writes traces."""
import json
import math
from pathlib import Path

import hydra
import pytest
import torch

from experiments.train import train
from lightning_modules.nets.unet import UNet

TINY = ["model.net.base_channels=8", "model.net.channel_mult=[1,2]", "model.net.attention_resolutions=[]",
        "data.batch_size=8", "logger=csv"]


def tiny_unet(channel_mult=(1, 2), **kw) -> UNet:
    torch.manual_seed(0)
    net = UNet(1, base_channels=8, channel_mult=channel_mult, num_res_blocks=1, attention_resolutions=(8,),
               image_size=16, **kw)
    with torch.no_grad():  # the zero-initialised output layers would make every gradient trivial
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 1000, (n,), generator=g)


def grads(net: UNet, x: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
    net.zero_grad()
    net(x, t).square().mean().backward()
    return [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("presets", ["[bf16,low_memory]", "cpu_fast"])
def test_cpu_speed_presets_train_on_cpu(make_cfg, presets):
    # Lightning refuses a fused optimiser together with mixed precision and gradient clipping,
    # so fused AdamW (cpu_fast, float32) and bf16 autocast + gradient checkpointing run apart.
    cfg = make_cfg(["debug=fast_dev_run", f"+speed={presets}", *TINY, "callbacks.sample_logger=null"], sub=presets)
    if presets == "cpu_fast":
        assert cfg.model.optimizer.fused is True and cfg.data.num_workers == 0
    else:
        assert cfg.trainer.precision == "bf16-mixed" and cfg.model.net.gradient_checkpointing is True
    summary = train(cfg)
    assert summary["status"] == "finished"
    assert math.isfinite(summary["train/loss"])


def test_gpu_preset_composes_every_switch(make_cfg):
    cfg = make_cfg(["+speed=gpu_fast", *TINY])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.benchmark is True
    assert cfg.data.pin_memory is True and cfg.data.num_workers == 4
    model = hydra.utils.instantiate(cfg.model)
    assert model.compile_net and model.channels_last
    assert isinstance(model.optimizer_factory(params=list(model.net.parameters())), torch.optim.AdamW)


def test_fused_adamw_matches_unfused_on_cpu():
    # torch >= 2.4 has a fused AdamW kernel for CPU tensors; it must take the same steps
    torch.manual_seed(0)
    nets = [torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = [p.detach().clone() for p in nets[0].parameters()]
    opts = [torch.optim.AdamW(nets[0].parameters(), lr=1e-2, fused=True),
            torch.optim.AdamW(nets[1].parameters(), lr=1e-2, fused=False, foreach=False)]
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            (net(x) - x).square().mean().backward()
            opt.step()
    assert max((a - p0).abs().max().item() for a, p0 in zip(nets[0].parameters(), start)) > 1e-2
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    x, t = batch()
    plain, ckpt = tiny_unet(), tiny_unet(gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    for a, b in zip(grads(plain, x, t), grads(ckpt, x, t)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_channels_last_switch_same_loss(make_cfg):
    losses = []
    for flag in (False, True):
        cfg = make_cfg([f"++model.channels_last={str(flag).lower()}", *TINY], sub=str(flag))
        torch.manual_seed(0)
        module = hydra.utils.instantiate(cfg.model)
        if flag:
            w = module.net.down[0][0].conv1.weight
            assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
        x0 = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        loss = module.diffusion_loss(x0, {}, generator=torch.Generator().manual_seed(3))
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)


def test_compile_switch_compiles_in_place_and_traces(make_cfg):
    cfg = make_cfg(["++model.compile=true", *TINY])
    module = hydra.utils.instantiate(cfg.model)
    keys = list(module.state_dict())
    module.configure_model()
    assert module.net._compiled_call_impl is not None  # nn.Module.compile: in place
    assert list(module.state_dict()) == keys  # checkpoints stay loadable without the compile switch
    # Inductor's C++ code generation takes minutes on a busy 2-core CPU, so the graph capture
    # (Dynamo + AOTAutograd, where models usually break) is run here with the aot_eager backend.
    net = tiny_unet(channel_mult=(1,))
    x, t = batch()
    eager = grads(net, x, t)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    net.zero_grad()
    compiled(x, t).square().mean().backward()
    for a, p in zip(eager, net.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-5, atol=1e-6)


def test_loader_workers_yield_the_same_batches(make_cfg):
    out = []
    for workers in (0, 2):
        cfg = make_cfg([f"data.num_workers={workers}", *TINY], sub=f"w{workers}")
        dm = hydra.utils.instantiate(cfg.data)
        dm.setup("fit")
        out.append([b["x"] for _, b in zip(range(3), dm.val_dataloader())])
    for a, b in zip(*out):
        assert torch.equal(a, b)


def test_sampling_in_inference_mode_matches_no_grad(make_cfg):
    from lightning_modules.diffusion.samplers import DDIMSampler

    cfg = make_cfg(TINY)
    torch.manual_seed(0)
    module = hydra.utils.instantiate(cfg.model)
    with torch.no_grad():
        for p in module.ema.shadow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sampler = DDIMSampler(steps=4, progress=False)
    a = module.sample(3, sampler=sampler, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        b = module.sample(3, sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and b.is_inference()


def test_profile_debug_config_writes_trace(make_cfg):
    cfg = make_cfg(["debug=profile", *TINY, "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
                    "trainer.profiler.schedule.active=2", "callbacks.sample_logger=null"])
    assert cfg.trainer.profiler.dirpath == str(Path(cfg.paths.output_dir) / "profiler")
    train(cfg)
    folder = Path(cfg.paths.output_dir) / "profiler"
    traces = list(folder.glob("*.pt.trace.json"))
    assert traces, f"no Chrome trace in {folder}: {sorted(p.name for p in folder.iterdir())}"
    events = json.loads(traces[0].read_text())["traceEvents"]
    assert any("training_step" in str(e.get("name", "")) or "aten::" in str(e.get("name", "")) for e in events)
