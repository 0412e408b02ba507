"""The pure-torch core: no HTTP, no pydantic. Everything the routes compute lives here."""
