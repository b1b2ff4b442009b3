"""Which optimizer is better: the study file, its sampling and running, the verdict, its report and figures."""
