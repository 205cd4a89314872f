"""The callback's answer NLL against `kvproj evaluate`'s for the same projector (step 2,000) and the same first 100
narrative examples: the callback's point file and the mean over the first 100 projected rows of evaluate's
generations file (all 124 examples).  python docs/results/curve-2000/nll_check.py  (writes nll_check.json beside it)"""

import json
import statistics
from pathlib import Path

here = Path(__file__).parent
point = json.loads((here / "narrative-step0002000.json").read_text())["conditions"]["projected"]
rows = [json.loads(line) for line in (here / "narrative-all-step2000-generations.jsonl").read_text().splitlines()]
first = [r for r in rows if r["condition"] == "projected"][:100]
out = {
    "command": "python docs/results/curve-2000/nll_check.py",
    "callback_step2000_first100": {"exact_match": point["exact_match"], "answer_nll": point["answer_nll"]},
    "evaluate_step2000_first100": {
        "exact_match": statistics.mean(float(r["correct"]) for r in first),
        "answer_nll": statistics.mean(r["answer_nll"] for r in first),
    },
}
(here / "nll_check.json").write_text(json.dumps(out, indent=1) + "\n")
print(json.dumps(out, indent=1))
