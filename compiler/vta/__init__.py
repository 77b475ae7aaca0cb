"""edgecam's VTA (Versatile Tensor Accelerator) back end, pure Python and numpy: the hardware
configuration and board presets (config), the instruction encoder (isa), the module/token pipeline
(pipeline), a bit-exact functional simulator (sim) with a race checker (races), a cycle model (cycles)
and a generator of one tiled int8 GEMM layer (gemm_program). docs/vta.md describes each."""
