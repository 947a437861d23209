"""Platform connectors: each turns one platform's API into a stream of Mentions."""
