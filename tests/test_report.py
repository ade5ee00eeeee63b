"""evaluate --compare: comparison.json and a self-contained report.html."""

import json
from html.parser import HTMLParser


def test_evaluate_compare_writes_report(lora_run, tiny_llama, tmp_path):
    from gentune.inference.evaluate import evaluate

    run, data = lora_run
    result = evaluate(
        str(run),
        str(data),
        tmp_path / "e",
        compare=tiny_llama,
        bootstrap=200,
        progress=False,
        decoding_overrides={"max_new_tokens": 6},
    )
    comp = json.loads((tmp_path / "e" / "comparison.json").read_text())
    names = [m["metric"] for m in comp["metrics"]]
    assert names[:4] == ["rougeL", "rouge1", "rouge2", "rougeLsum"]
    rl = comp["metrics"][0]
    assert rl["ci"][0] <= rl["difference"] <= rl["ci"][1]
    assert (tmp_path / "e" / "base" / "predictions.jsonl").exists()
    assert result["rougeL"] == rl["tuned"]

    class Parser(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.images, self.samples, self.h2, self.links = 0, [], 0, [], []
            self._in_h2 = False

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            self.tables += tag == "table"
            if tag == "img":
                self.images.append(a.get("src", ""))
            if tag == "tr" and a.get("class") == "sample":
                self.samples += 1
            if tag in ("link", "script") and a.get("src"):
                self.links.append(a["src"])
            self._in_h2 = tag == "h2"

        def handle_data(self, data):
            if self._in_h2:
                self.h2.append(data)
                self._in_h2 = False

    p = Parser()
    p.feed((tmp_path / "e" / "report.html").read_text())
    assert p.tables >= 4  # metrics + samples, wins, losses
    assert len(p.images) == 2 and all(s.startswith("data:image/png;base64,") for s in p.images)
    assert {
        "Metrics",
        "Training curves",
        "Lengths",
        "Samples",
        "Biggest wins",
        "Biggest losses",
    } <= set(p.h2)
    assert p.samples >= 5 + 3 + 3 - 6  # (small data: wins and losses may overlap samples)
    assert not p.links  # nothing loaded from the network
