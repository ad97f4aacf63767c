import os

# MKL otherwise chooses its thread count per call at run time, which changes the summation order of fp32 matmuls
# (backward passes especially) from one process to the next. Exact resume and reproducible runs need one order.
# Read lazily at MKL's first call, so importing rlsr before any computation is enough; an explicit setting wins.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
