"""HTTP and WebSocket surface: routers, auth, error handlers and request limits (DESIGN.md §2)."""
