// Modelina on AsyncAPI documents: prints {path: {errors: [...], models: [{name, code}]}} as JSON.
import { readFile } from "node:fs/promises";
import { TypeScriptGenerator } from "@asyncapi/modelina";

const report = {};
for (const path of process.argv.slice(2)) {
  const document = JSON.parse(await readFile(path, "utf8"));
  try {
    const generator = new TypeScriptGenerator({ modelType: "interface" });
    const models = await generator.generate(document);
    report[path] = { errors: [], models: models.map((m) => ({ name: m.modelName, code: m.result })) };
  } catch (error) {
    report[path] = { errors: [String(error && error.stack || error)], models: [] };
  }
}
process.stdout.write(JSON.stringify(report));
