// A small JSON CRUD API for "items", kept in nimbus's KV store.
//
//   GET    /items        list items
//   POST   /items        create an item from a JSON body       -> 201 {"id": ..., ...}
//   GET    /items/{id}   read one item                          -> 404 if missing
//   PUT    /items/{id}   replace an item's fields with the body -> 404 if missing
//   DELETE /items/{id}   delete an item                         -> 404 if missing
//
// `require("nimbus")` ships with the runtime (nothing to install). The items live in the KV
// namespace "items" ([kv.items] in nimbus.toml, granted read-write to this function), one key
// per item ("item/ID", the item as JSON); ids come from an atomic counter ("next-id"). The data
// is on disk, so it survives restarts, and every instance sees the same items.
const { kv } = require('nimbus');

const items = kv('items');
const PREFIX = 'item/';

const json = (statusCode, value) => ({
  statusCode,
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify(value),
});

function parseBody(event) {
  if (!event.body) return { error: 'a JSON object body is required' };
  const raw = event.isBase64Encoded ? Buffer.from(event.body, 'base64').toString('utf8') : event.body;
  let value;
  try {
    value = JSON.parse(raw);
  } catch (e) {
    return { error: `invalid JSON: ${e.message}` };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { error: 'the body must be a JSON object' };
  }
  delete value.id; // the id comes from the path / the counter
  return { value };
}

// Every item, page by page (a page holds up to 1000 keys; 100 pages at most here).
async function listItems() {
  const out = [];
  let cursor = null;
  for (let page = 0; page < 100; page++) {
    const { keys, cursor: next } = await items.list({ prefix: PREFIX, cursor });
    const values = await Promise.all(keys.map((k) => items.get(k.name, { type: 'json' })));
    out.push(...values.filter((v) => v !== null));
    if (!next) break;
    cursor = next;
  }
  return out.sort((a, b) => Number(a.id) - Number(b.id));
}

exports.handler = async (event, context) => {
  const method = event.requestContext.http.method;
  const id = (event.pathParameters || {}).id;

  if (id === undefined || id === null) {
    if (method === 'GET') return json(200, { items: await listItems() });
    if (method === 'POST') {
      const { value, error } = parseBody(event);
      if (error) return json(400, { error });
      const item = { id: String(await items.increment('next-id')), ...value };
      await items.put(PREFIX + item.id, item);
      return json(201, item);
    }
    return json(405, { error: `method ${method} not allowed on /items` });
  }

  const found = await items.getWithVersion(PREFIX + id, { type: 'json' });
  if (!found) return json(404, { error: `item ${id} not found` });
  switch (method) {
    case 'GET':
      return json(200, found.value);
    case 'PUT': {
      const { value, error } = parseBody(event);
      if (error) return json(400, { error });
      const updated = { id, ...value };
      // Only over the version read above: a concurrent PUT or DELETE is not silently undone.
      if ((await items.compareAndSwap(PREFIX + id, found.version, updated)) === null) {
        return json(409, { error: `item ${id} changed meanwhile; read it again` });
      }
      return json(200, updated);
    }
    case 'DELETE':
      await items.delete(PREFIX + id);
      return json(200, { deleted: id });
    default:
      return json(405, { error: `method ${method} not allowed on /items/{id}` });
  }
};
