"""One module per group of the seed's endpoint table; ``api.app`` mounts them under /api/v1."""
