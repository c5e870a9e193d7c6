"""LightningModules and the plain-PyTorch parts they are built from."""
