// Validate AsyncAPI documents with the official parser (@asyncapi/parser).
// Usage: node validate-asyncapi.mjs FILE...   Prints one JSON object: {FILE: [diagnostic, ...]}.
// A diagnostic is {severity, code, message, path}; severity 0 is an error, 1 a warning.
import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

const parser = new Parser();
const report = {};
for (const file of process.argv.slice(2)) {
  const text = await readFile(file, "utf8");
  const diagnostics = await parser.validate(text);
  report[file] = diagnostics.map((d) => ({
    severity: d.severity,
    code: String(d.code),
    message: d.message,
    path: d.path,
  }));
}
process.stdout.write(JSON.stringify(report));
