// The module componentize-js builds: app.js is an ordinary Workers-style script;
// workers.js (imported first, so its addEventListener is in place when app.js
// registers) turns wasi:http requests into fetch events.
import './workers.js';
import './app.js';

export { incomingHandler } from './workers.js';
