// A node `http` service with no tracing code: one event loop serving every request at once.
//
// Usage: node node_service.js URL_PREFIX DELAY_MS
//   GET /work?i=N -> waits DELAY_MS (other requests are read meanwhile), then calls
//                    GET URL_PREFIX/item/N with node's own client (keep-alive agent) and
//                    answers 200 with "got <length of the answer>".
// Prints "PORT <n>" once listening on 127.0.0.1.
'use strict';
const http = require('http');

const [prefix, delayMs] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: true, maxSockets: 100 });

const server = http.createServer((req, res) => {
  const i = new URL(req.url, 'http://x').searchParams.get('i') || '0';
  setTimeout(() => {
    http.get(`${prefix}/item/${i}`, { agent }, (down) => {
      let n = 0;
      down.on('data', (chunk) => { n += chunk.length; });
      down.on('end', () => {
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        res.end(`got ${n}`);
      });
    }).on('error', (e) => {
      res.writeHead(502);
      res.end(String(e));
    });
  }, Number(delayMs));
});

server.listen(0, '127.0.0.1', () => {
  console.log(`PORT ${server.address().port}`);
});
