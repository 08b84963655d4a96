"""The HTTP side: the FastAPI server and its middleware, the web chat's delivery, the staff page."""
