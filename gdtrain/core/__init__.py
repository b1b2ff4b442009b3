"""The foundations every layer shares, torch-free: errors, YAML, the config schema, names,
the run-folder contract, processes and signals."""
