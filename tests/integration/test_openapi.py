"""docs/openapi.yaml describes the admin API's router exactly: every route of
admin/api.c's table is in it with its method, and it lists no other."""

import os
import re

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def router_routes():
    with open(os.path.join(ROOT, "admin", "api.c")) as f:
        text = f.read()
    table = text[text.index("const struct admin_route admin_routes[]"):]
    table = table[:table.index("};")]
    return {(m.lower(), p) for m, p in re.findall(r'\{"(GET|POST|PUT|DELETE)", "([^"]+)"', table)}


def test_every_route_is_in_openapi():
    with open(os.path.join(ROOT, "docs", "openapi.yaml")) as f:
        doc = yaml.safe_load(f)
    assert doc["openapi"].startswith("3.")
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops
                  if m in ("get", "post", "put", "delete")}
    routes = router_routes()
    assert len(routes) > 20
    assert routes - documented == set(), "routes missing from docs/openapi.yaml"
    assert documented - routes == set(), "docs/openapi.yaml lists routes the router lacks"
    # every {param} of a path is declared
    for p, ops in doc["paths"].items():
        names = set(re.findall(r"\{(\w+)\}", p))
        declared = {x["name"] for x in ops.get("parameters", []) if "name" in x}
        for m in ("get", "post", "put", "delete"):
            if m in ops:
                have = declared | {x["name"] for x in ops[m].get("parameters", [])
                                   if "name" in x}
                assert names <= have, (p, m, names - have)
