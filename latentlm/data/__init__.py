"""Built-in data: the shapes world and the task mixtures drawn from it."""
