"""A data-plane worker process of ``nonstop lb --workers N`` (started by the control process).

Role: load the same config, listen on every http/tcp service with SO_REUSEPORT, follow
the control process's shared pool state and write its own stats (see nonstop.lb.runtime).

Must not: run health checks, the admin API or the nft plane (the control process does).
"""

from __future__ import annotations

import argparse
import logging

import uvloop

from nonstop.lb.config import load_config
from nonstop.lb.runtime import Balancer


def main() -> None:
    parser = argparse.ArgumentParser(prog="nonstop.lb.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s worker{args.id} %(name)s %(message)s")
    config = load_config(args.config)
    balancer = Balancer(
        config, config_path=args.config, workers=args.workers, role="worker", state_dir=args.state_dir, worker_id=args.id
    )
    uvloop.run(balancer.run_until_signalled())


if __name__ == "__main__":
    main()
