// validate-k8s.mjs - check Kubernetes objects against the API schemas of the
// npm package kubernetes-models (generated from Kubernetes' OpenAPI spec) and
// @kubernetes-models/prometheus-operator, offline.
//
//   node validate-k8s.mjs NODE_MODULES < objects.json
//
// objects.json is a JSON array of objects. Prints one line per object
// ("ok Kind/name" or "invalid Kind/name: errors") and exits 1 if any object is
// invalid or of a kind it has no schema for. Field types, enums, required
// fields and formats are checked; unknown fields are not (the schemas allow
// them), so tests/deploy also asserts the fields it relies on.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const mods = process.argv[2];
if (!mods) {
  console.error("usage: node validate-k8s.mjs NODE_MODULES < objects.json");
  process.exit(2);
}

function modulePath(apiVersion, kind) {
  if (apiVersion === "monitoring.coreos.com/v1") {
    return join(mods, "@kubernetes-models/prometheus-operator", apiVersion, `${kind}.js`);
  }
  // "v1" is the core group; "apps/v1" and the like are named groups.
  return join(mods, "kubernetes-models", apiVersion, `${kind}.js`);
}

const objects = JSON.parse(readFileSync(0, "utf8"));
let bad = 0;
for (const obj of objects) {
  const label = `${obj.kind}/${obj.metadata && obj.metadata.name}`;
  let Model;
  try {
    Model = (await import(pathToFileURL(modulePath(obj.apiVersion, obj.kind)).href))[obj.kind];
  } catch (e) {
    console.log(`invalid ${label}: no schema for ${obj.apiVersion} ${obj.kind}`);
    bad++;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`ok ${label}`);
  } catch (e) {
    console.log(`invalid ${label}: ${e.message}`);
    bad++;
  }
}
process.exit(bad ? 1 : 0);
