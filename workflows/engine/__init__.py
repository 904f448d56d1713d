"""The built-in workflow engine: definitions (format and checks), actions, variables and the runner."""
