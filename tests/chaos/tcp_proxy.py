"""A TCP forwarder on loopback that the fault suite puts between the gateway and PostgreSQL, so
that the database can "go away" without touching the machine's PostgreSQL.

SIGUSR1: down — stop listening (new connections are refused) and cut every open connection, as a
database restart or a failover does. SIGUSR2: up again on the same port.

    python -m tests.chaos.tcp_proxy --port N --target-port 5432
"""

import argparse
import asyncio
import contextlib
import signal


class Forwarder:
    def __init__(self, port: int, target: tuple[str, int]):
        self.port, self.target = port, target
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        if self.server is None:
            self.server = await asyncio.start_server(self.link, "127.0.0.1", self.port, reuse_address=True)

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.links):
            writer.transport.abort()
        self.links.clear()

    async def link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.links |= {writer, up_writer}
        await asyncio.gather(self.pipe(reader, up_writer), self.pipe(up_reader, writer))
        self.links -= {writer, up_writer}

    @staticmethod
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


async def serve(port: int, target: tuple[str, int]) -> None:
    forwarder = Forwarder(port, target)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: loop.create_task(forwarder.down()))
    loop.add_signal_handler(signal.SIGUSR2, lambda: loop.create_task(forwarder.up()))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await forwarder.up()
    print("ready", flush=True)
    await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, default=5432)
    args = parser.parse_args()
    asyncio.run(serve(args.port, (args.target_host, args.target_port)))


if __name__ == "__main__":
    main()
