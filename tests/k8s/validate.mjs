// Offline Kubernetes schema validation: every object in the given files (JSON: one object, a
// List, or an array of objects; anything else: multi-document YAML, read with js-yaml) is checked against the model classes of
// @kubernetes/client-node 2.x (OpenAPI of Kubernetes 1.36): unknown fields and wrong types are
// errors, with the object and the field path.
//
//   node validate.mjs NODE_MODULES_DIR FILE...
// Exit 0: all valid; 1: errors printed, one a line; 2: usage or setup problem.
import { pathToFileURL } from 'node:url';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const [modulesDir, ...files] = process.argv.slice(2);
if (!modulesDir || files.length === 0) {
  console.error('usage: node validate.mjs NODE_MODULES_DIR FILE.json...');
  process.exit(2);
}
let models;
try {
  models = await import(pathToFileURL(join(modulesDir, '@kubernetes/client-node/dist/gen/models/all.js')).href);
} catch (e) {
  console.error(`cannot load @kubernetes/client-node from ${modulesDir}: ${e.message}\n` +
                'run tests/k8s/install_validator.sh');
  process.exit(2);
}

const errors = [];
const isInt = (v) => typeof v === 'number' && Number.isInteger(v);

function check(value, type, format, path) {
  if (value === null) return;  // null means "unset" to the API server's JSON decoder
  if (type === 'any' || type === 'object') return;
  if (type === 'string' || type === 'Date') {
    if (typeof value !== 'string') errors.push(`${path}: expected a string, got ${JSON.stringify(value)}`);
    return;
  }
  if (type === 'number') {
    if (typeof value !== 'number') errors.push(`${path}: expected a number, got ${JSON.stringify(value)}`);
    else if ((format === 'int32' || format === 'int64') && !isInt(value)) errors.push(`${path}: expected an integer, got ${value}`);
    return;
  }
  if (type === 'boolean') {
    if (typeof value !== 'boolean') errors.push(`${path}: expected a boolean, got ${JSON.stringify(value)}`);
    return;
  }
  if (type === 'IntOrString') {
    if (!isInt(value) && typeof value !== 'string') errors.push(`${path}: expected an integer or a string, got ${JSON.stringify(value)}`);
    return;
  }
  let m = /^Array<(.+)>$/.exec(type);
  if (m) {
    if (!Array.isArray(value)) { errors.push(`${path}: expected a list, got ${JSON.stringify(value)}`); return; }
    value.forEach((item, i) => check(item, m[1], '', `${path}[${i}]`));
    return;
  }
  m = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (m) {
    if (typeof value !== 'object' || Array.isArray(value)) { errors.push(`${path}: expected a map, got ${JSON.stringify(value)}`); return; }
    for (const [k, v] of Object.entries(value)) check(v, m[1], '', `${path}[${JSON.stringify(k)}]`);
    return;
  }
  const cls = models[type];
  if (!cls || !cls.attributeTypeMap) { errors.push(`${path}: validator does not know type ${type}`); return; }
  if (typeof value !== 'object' || Array.isArray(value)) { errors.push(`${path}: expected an object (${type}), got ${JSON.stringify(value)}`); return; }
  const fields = new Map(cls.attributeTypeMap.map((a) => [a.baseName, a]));
  for (const [k, v] of Object.entries(value)) {
    const a = fields.get(k);
    if (!a) { errors.push(`${path}.${k}: unknown field (not in ${type})`); continue; }
    check(v, a.type, a.format, `${path}.${k}`);
  }
}

function className(obj) {
  const [group, version] = obj.apiVersion.includes('/') ? obj.apiVersion.split('/') : ['', obj.apiVersion];
  const v = version.charAt(0).toUpperCase() + version.slice(1);
  const candidates = [`${v}${obj.kind}`];
  // Group-qualified names, e.g. AdmissionregistrationV1... (only for a few kinds).
  if (group) candidates.push(group.split('.')[0].replace(/^./, (c) => c.toUpperCase()) + v + obj.kind);
  return candidates.find((c) => models[c] && models[c].attributeTypeMap);
}

function validateObject(obj, where) {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) { errors.push(`${where}: not an object`); return; }
  if (typeof obj.apiVersion !== 'string' || typeof obj.kind !== 'string') { errors.push(`${where}: apiVersion and kind are required strings`); return; }
  const name = `${where} ${obj.kind}/${obj.metadata && obj.metadata.name}`;
  if (obj.kind === 'List' || obj.kind.endsWith('List')) {
    (obj.items || []).forEach((item, i) => validateObject(item, `${where}.items[${i}]`));
    return;
  }
  const cls = className(obj);
  if (!cls) { errors.push(`${name}: unknown apiVersion/kind ${obj.apiVersion} ${obj.kind}`); return; }
  check(obj, cls, '', name);
}

const yaml = await import(pathToFileURL(join(modulesDir, 'js-yaml/dist/js-yaml.mjs')).href);
let count = 0;
for (const file of files) {
  let data;
  try {
    const text = readFileSync(file, 'utf8');
    data = file.endsWith('.json') ? JSON.parse(text) : yaml.loadAll(text).filter((d) => d != null);
  } catch (e) { console.error(`${file}: ${e.message}`); process.exit(2); }
  const objects = Array.isArray(data) ? data : [data];
  objects.forEach((o, i) => { validateObject(o, `${file}[${i}]`); count++; });
}
for (const e of errors) console.log(`INVALID ${e}`);
if (errors.length) process.exit(1);
console.log(`valid: ${count} object(s)`);
