"""Defaults and choice sets that the CLI shows in its help, spelled once, in a leaf module: building
the argument parser loads no analysis code (report, runner, slimming, scaling), so `--help` and
every bad-argument exit stay fast. The modules that use them re-export them under their old names."""

# slim and report --eval (docs/slim.md)
METHODS = ("id", "variance")  # neuron selection: interpolative decomposition, or the top-variance baseline
SCHEDULES = ("uniform", "per-layer")
DEFAULT_RIDGE = 1e-4  # relative to the mean variance of the kept neurons (docs/slim.md: measured on four models)
DEFAULT_MAX_LOSS = 0.01  # nats per token

# sui-onnx scaling (docs/scaling.md)
DEFAULT_TAU = 0.05  # saturation threshold on d hard / d D
DEFAULT_MIN_R2 = 0.95  # fits with a lower R^2 are flagged: not a clean power law (the goal for soft rank)
DEFAULT_SEED_KEY = "seed"  # where a report records its training seed
