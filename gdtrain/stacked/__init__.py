"""Many runs trained as one: stacked models, data, optimizer rules and lr, and their loop."""
