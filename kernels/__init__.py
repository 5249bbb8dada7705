"""Triton kernels of eqscale's ops, one module per op (installed as ``eqscale.kernels``)."""
