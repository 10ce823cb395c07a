"""Domain logic between the routers and the repositories. Services flush; the edge commits."""
