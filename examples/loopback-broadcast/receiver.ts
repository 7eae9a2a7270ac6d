// One receiver process of the loopback-broadcast example (main.ts forks several of these).
// It binds the loopback broadcast address with address reuse, so every receiver on the host gets
// every datagram sent there, and drops the repeated copies with podpool's datagram receiver.
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { datagramReceiver } from 'podpool';

const BROADCAST = '127.255.255.255';
const port = Number(process.argv[2]);
const send = (message: object): void => void process.send!(message);

const socket = createSocket({ type: 'udp4', reuseAddr: true });
const receiver = datagramReceiver({
  onMessage: (m) => send({ type: 'message', sender: m.sender, sequence: m.sequence, body: Buffer.from(m.body).toString() }),
  onGap: (gap) => send({ type: 'gap', ...gap }),
});
receiver.listen(socket);
socket.bind(port, BROADCAST);
await once(socket, 'listening');
send({ type: 'ready', pid: process.pid });

process.on('message', (message: { type: string }) => {
  if (message.type !== 'stop') return;
  socket.close(() => {
    send({ type: 'stats', ...receiver.stats() });
    process.disconnect();
  });
});
