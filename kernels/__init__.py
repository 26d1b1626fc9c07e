"""Triton kernels, one op per file, each beside its pure-PyTorch reference. Installed as
``agentspark.kernels``. The references they are tested against live in the core today
(``agentspark.verify.verify_chain``, ``agentspark.sampling``)."""
