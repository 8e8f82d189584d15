"""Planning with the registry: which heads follow the trunk, what each op becomes, and the output geometry."""
