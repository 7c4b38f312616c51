"""tunehouse HTTP layer: the FastAPI app, its endpoints and dependencies, and the command line. Stands on the domain layer (domain/); never imports torch."""
