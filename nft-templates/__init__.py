"""nft templates of the routers' rulesets, shipped as package data (testbed.templates)."""
