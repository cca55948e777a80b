"""Network benchmarks: lab fabric, host networking and NIC teaming."""
