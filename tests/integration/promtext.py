"""A strict reader of the Prometheus text exposition format 0.0.4 as
Starling writes it (GET /metrics), shared by the integration and cluster
tests: parse() fails (AssertionError, ValueError, IndexError) on anything the
format forbids, and on what Prometheus' conventions forbid that Starling
promises (docs/operations.md)."""

import math
import re

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


class Histogram:
    """One histogram series: buckets [(le, cumulative count)], sum, count."""

    def __init__(self):
        self.buckets = []
        self.sum = None
        self.count = None

    def __repr__(self):
        return f"Histogram(count={self.count}, sum={self.sum}, buckets={self.buckets})"


def parse_value(s):
    if s in ("NaN", "+Inf", "-Inf"):
        return float(s.replace("Inf", "inf"))
    if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", s):
        raise AssertionError(f"bad sample value {s!r}")
    return float(s)


def parse_labels(s, lineno):
    """`s` starts after '{'; returns (labels dict, rest after '}')."""
    labels = {}
    i = 0
    while True:
        if s[i:i + 1] == "}":
            return labels, s[i + 1:]
        j = s.index("=", i)
        name = s[i:j]
        assert LABEL_RE.match(name) and not name.startswith("__"), f"line {lineno}: label {name!r}"
        assert name not in labels, f"line {lineno}: label {name} twice"
        assert s[j + 1] == '"', f"line {lineno}: label value not quoted"
        k = j + 2
        value = []
        while s[k] != '"':
            if s[k] == "\\":
                esc = s[k + 1]
                assert esc in ('\\', '"', 'n'), f"line {lineno}: bad escape \\{esc}"
                value.append("\n" if esc == "n" else esc)
                k += 2
            else:
                assert s[k] != "\n"
                value.append(s[k])
                k += 1
        labels[name] = "".join(value)
        k += 1
        if s[k] == ",":
            k += 1
        else:
            assert s[k] == "}", f"line {lineno}: expected ',' or '}}' after a label"
        i = k


def _sample_family(name, current, families, lineno):
    """The family a sample named `name` belongs to: the current family, or
    for a histogram one of its _bucket/_sum/_count series."""
    assert current is not None, f"line {lineno}: sample {name} before any TYPE"
    if families[current]["type"] == "histogram":
        assert name in (current + s for s in HIST_SUFFIXES), \
            f"line {lineno}: sample {name} in histogram {current}"
        return name[len(current):]
    assert name == current, f"line {lineno}: sample of {name} outside its family"
    return ""


def _check_histogram(name, series):
    for labels, h in series.items():
        assert h.buckets, f"{name}{labels}: no buckets"
        assert h.sum is not None and h.count is not None, f"{name}{labels}: _sum and _count"
        les = [le for le, _ in h.buckets]
        assert les == sorted(les) and len(set(les)) == len(les), f"{name}: le not ascending"
        assert les[-1] == math.inf, f"{name}: the last bucket must be +Inf"
        counts = [v for _, v in h.buckets]
        assert all(a <= b for a, b in zip(counts, counts[1:])), f"{name}: buckets not cumulative"
        assert counts[-1] == h.count, f"{name}: +Inf bucket {counts[-1]} != count {h.count}"
        assert all(v >= 0 and v == int(v) for v in counts), f"{name}: bucket counts"
        assert h.sum >= 0, f"{name}: negative sum"
        if h.count == 0:
            assert h.sum == 0, f"{name}: a sum without observations"


def parse(text):
    """Returns {family: {"type", "help", "samples": {labels: value}}}; a
    histogram's samples are {labels without le: Histogram}."""
    assert text.endswith("\n"), "the text must end with a line feed"
    families = {}
    current = None
    seen_samples = set()
    for lineno, line in enumerate(text[:-1].split("\n"), 1):
        assert line, f"line {lineno}: empty line"
        assert line == line.strip(), f"line {lineno}: leading or trailing blanks"
        if line.startswith("#"):
            parts = line.split(" ", 3)
            assert parts[0] == "#" and parts[1] in ("HELP", "TYPE"), f"line {lineno}: {line!r}"
            assert len(parts) == 4, f"line {lineno}: {line!r}"
            _, kind, name, rest = parts
            assert NAME_RE.match(name), f"line {lineno}: metric name {name!r}"
            f = families.setdefault(name, {"type": None, "help": None, "samples": {}})
            assert not f["samples"], f"line {lineno}: {kind} after the samples of {name}"
            if kind == "TYPE":
                assert f["type"] is None, f"line {lineno}: second TYPE for {name}"
                assert rest in TYPES, f"line {lineno}: type {rest!r}"
                f["type"] = rest
            else:
                assert f["help"] is None, f"line {lineno}: second HELP for {name}"
                assert rest and "\n" not in rest
                f["help"] = rest
            current = name
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(.*)\Z", line)
        assert m, f"line {lineno}: {line!r}"
        name, rest = m.group(1), m.group(2)
        labels = {}
        if rest.startswith("{"):
            labels, rest = parse_labels(rest[1:], lineno)
        assert rest.startswith(" "), f"line {lineno}: no blank before the value"
        fields = rest[1:].split(" ")
        assert 1 <= len(fields) <= 2, f"line {lineno}: {line!r}"
        value = parse_value(fields[0])
        if len(fields) == 2:
            assert re.fullmatch(r"-?\d+", fields[1]), f"line {lineno}: bad timestamp"
        suffix = _sample_family(name, current, families, lineno)
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen_samples, f"line {lineno}: duplicate sample {key}"
        seen_samples.add(key)
        fam = families[current]
        if fam["type"] != "histogram":
            fam["samples"][tuple(sorted(labels.items()))] = value
            continue
        le = labels.pop("le", None)
        assert (le is not None) == (suffix == "_bucket"), f"line {lineno}: le on {name}"
        h = fam["samples"].setdefault(tuple(sorted(labels.items())), Histogram())
        if suffix == "_bucket":
            h.buckets.append((parse_value(le), value))
        elif suffix == "_sum":
            assert h.sum is None
            h.sum = value
        else:
            assert h.count is None
            h.count = value
    for name, f in families.items():
        if f["type"] == "histogram":
            _check_histogram(name, f["samples"])
    return families


def check(text):
    """parse() plus Starling's promises: the starling_ namespace, HELP and
    TYPE for every family, at least one sample, `_total` exactly on
    counters, `_seconds` on histograms, counters whole and not negative.
    Returns {family: samples} and {family: type}."""
    fams = parse(text)
    for name, f in fams.items():
        assert name.startswith("starling_"), name
        assert f["type"] and f["help"], f"{name}: HELP and TYPE lines"
        assert f["samples"], f"{name}: no samples"
        assert name.endswith("_total") == (f["type"] == "counter"), name
        if f["type"] == "histogram":
            assert name.endswith("_seconds"), name
            continue
        for v in f["samples"].values():
            assert not math.isnan(v)
            if f["type"] == "counter":
                assert v >= 0 and v == int(v)
    return ({name: f["samples"] for name, f in fams.items()},
            {name: f["type"] for name, f in fams.items()})
