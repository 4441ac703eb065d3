// Split packets.bin with @serialport/parser-spacepacket 13.0.0, an
// implementation nobody on Meridian wrote, feeding it in random chunks as a
// socket would. Its output is the expectation the Go decoder is checked
// against (packets.node.json). Run through gen.sh; see ../README.md.
//
// Pinned: @serialport/parser-spacepacket 13.0.0, Node 20.
'use strict';
const fs = require('fs');
const path = require('path');
const { SpacePacketParser } = require('@serialport/parser-spacepacket');

const out = process.argv[2];
const data = fs.readFileSync(path.join(out, 'packets.bin'));
const parser = new SpacePacketParser();
const packets = [];
parser.on('data', (p) => {
  if (Array.isArray(p)) return; // _flush pushes the bytes left over
  packets.push({
    apid: p.header.identification.apid,
    type: p.header.identification.type,
    sec_header: p.header.identification.secondaryHeader === 1,
    seq_flags: p.header.sequenceControl.sequenceFlags,
    seq_count: p.header.sequenceControl.packetName,
    data_length: p.header.dataLength - 1, // the parser adds the 1 back
    data_hex: Buffer.from(p.data, 'utf8').toString('hex'),
  });
});
parser.on('end', () => {
  fs.writeFileSync(path.join(out, 'packets.node.json'),
    JSON.stringify({ generator: '@serialport/parser-spacepacket 13.0.0', packets }, null, 1) + '\n');
  console.log(`split ${packets.length} packets`);
});
// A fixed pseudo-random chunking (LCG), so the output is reproducible.
let seed = 12345;
const next = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed; };
let off = 0;
while (off < data.length) {
  const n = 1 + (next() % 700);
  parser.write(data.subarray(off, off + n));
  off += n;
}
parser.end();
