// hcl2json.cjs - parse Terraform files with @cdktf/hcl2json and print one JSON
// object {file name: parsed file}. Exits 1 with the parser's message when a
// file is not valid HCL.
//
//   node hcl2json.cjs NODE_MODULES FILE.tf...
const { readFileSync } = require("node:fs");
const { basename, join } = require("node:path");

const [mods, ...files] = process.argv.slice(2);
const { parse } = require(join(mods, "@cdktf/hcl2json"));

(async () => {
  const out = {};
  for (const f of files) {
    try {
      out[basename(f)] = await parse(basename(f), readFileSync(f, "utf8"));
    } catch (e) {
      console.error(`${f}: ${e.message || e}`);
      process.exit(1);
    }
  }
  process.stdout.write(JSON.stringify(out));
})();
