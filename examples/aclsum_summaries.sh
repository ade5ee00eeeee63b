#!/usr/bin/env bash
# A summarization file "a user brings": 250 ACLSum abstracts -> their expert summaries, trained
# with gentune's default settings, then base and fine-tuned scored on the held-out rows.
#   ./dev setup && bash examples/aclsum_summaries.sh [OUT]      (about 7 minutes on 2 CPU cores)
set -euo pipefail
OUT=${1:-runs/aclsum-summaries}
PY=${PY:-.venv/bin/python}
GT=${GT:-.venv/bin/gentune}
mkdir -p "$OUT"
"$PY" - "$OUT/data.jsonl" <<'PY'
import sys
from pathlib import Path
from gentune.demo import aclsum_rows, write_jsonl
rows = [r for split in ("train", "val", "test") for r in aclsum_rows(split, target="summary")]
write_jsonl(Path(sys.argv[1]), rows)
print(f"{len(rows)} rows -> {sys.argv[1]}")
PY
"$GT" train --task summarization --data "$OUT/data.jsonl" --out "$OUT/run" --overwrite
"$GT" evaluate smollm2-135m --task summarization --data "$OUT/run/heldout.jsonl" --out "$OUT/eval-base"
"$GT" evaluate "$OUT/run" --data "$OUT/run/heldout.jsonl" --out "$OUT/eval-tuned"
