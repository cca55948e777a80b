"""Pure host-networking core: names, desired state, nftables rendering, convergence and IPAM."""
