"""Run folders read back: statistics, the compare rows and table, the compare plot."""
