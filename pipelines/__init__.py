"""KFP pipelines (wiring only) and their compile entry point."""
