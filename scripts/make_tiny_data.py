"""Regenerates the bundled synthetic datasets under data/ (deterministic; the output is committed).

python scripts/make_tiny_data.py --out data
"""

import argparse
from pathlib import Path

from autorule.data.synthetic import (
    write_feedback_collection,
    write_instruction_sources,
    write_mt_bench,
    write_reward_bench,
    write_ultrafeedback,
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_ultrafeedback(args.out / "ultrafeedback_binarized", seed=args.seed))
    print(write_mt_bench(args.out / "mt_bench_human_judgments", seed=args.seed))
    print(write_reward_bench(args.out / "reward_bench", seed=args.seed))
    print(write_feedback_collection(args.out / "feedback_collection", seed=args.seed))
    for folder in write_instruction_sources(args.out, seed=args.seed):
        print(folder)
