"""The host agent: ``nonstop agent --host NAME --store URL`` keeps this host's guests as the store says."""
