"""asyncssh: an SSH server and client on one loop.

asyncssh builds on the loop's TCP transports and flow control, and its
server hands a session to a real subprocess (asyncio.create_subprocess_shell,
whose pipes are redirected into the SSH channel), so this covers streams,
pipes and processes together as an SSH server runs them: commands with
input and large output, an exit status, SFTP up and down (3 MiB, many
channel windows), local port forwarding through the connection to a
server on the same loop, and many sessions at once.
"""

import asyncio
import hashlib
import os
import warnings

import pytest

from conftest import need_module

with warnings.catch_warnings():  # cryptography's DSA deprecation, raised at import
    warnings.simplefilter("ignore")
    asyncssh = need_module("asyncssh")


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username):
        return False  # no authentication: a test server on loopback

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        return True  # direct-tcpip: local port forwarding


async def _session(process):
    """The command runs in a real shell, its pipes redirected to the channel."""
    proc = await asyncio.create_subprocess_shell(
        process.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    await process.redirect(stdin=proc.stdin, stdout=proc.stdout, stderr=proc.stderr)
    process.exit(await proc.wait())
    await process.wait_closed()  # runs the redirects' clean-up (asyncssh's own example does)


@pytest.fixture(scope="module")
def host_key():
    return asyncssh.generate_private_key("ssh-ed25519")


async def _start(host_key, root):
    server = await asyncssh.create_server(
        _Server, "127.0.0.1", 0, server_host_keys=[host_key], process_factory=_session,
        sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=root))
    return server, server.sockets[0].getsockname()[1]


def test_commands_through_a_real_shell(runner, host_key, tmp_path, check_loop):
    async def main():
        check_loop(asyncio.get_running_loop())
        server, port = await _start(host_key, str(tmp_path))
        try:
            async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="u") as conn:
                r = await conn.run("tr a-z A-Z", input="hello\nworld\n", check=True)
                assert r.stdout == "HELLO\nWORLD\n"
                r = await conn.run("head -c 5000000 /dev/zero | sha256sum; echo err >&2; exit 3")
                assert r.exit_status == 3 and r.stderr == "err\n"
                assert r.stdout.split()[0] == hashlib.sha256(bytes(5000000)).hexdigest()
                big = os.urandom(2 << 20).hex()  # 4 MiB through stdin, back through stdout
                r = await conn.run("cat", input=big, check=True)
                assert r.stdout == big
                results = await asyncio.gather(*(conn.run(f"echo {i}; sleep 0.1") for i in range(20)))
                assert [r.stdout for r in results] == [f"{i}\n" for i in range(20)]
        finally:
            server.close()
            await server.wait_closed()

    runner.run(main())


def test_sftp_and_local_port_forwarding(runner, host_key, tmp_path):
    async def main():
        server, port = await _start(host_key, str(tmp_path))

        async def echo(reader, writer):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        target = await asyncio.start_server(echo, "127.0.0.1", 0)
        try:
            async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="u") as conn:
                data = os.urandom(3 << 20)
                async with conn.start_sftp_client() as sftp:
                    async with sftp.open("up.bin", "wb") as f:
                        await f.write(data)
                    assert (tmp_path / "up.bin").read_bytes() == data
                    async with sftp.open("up.bin", "rb") as f:
                        assert await f.read() == data

                listener = await conn.forward_local_port(
                    "127.0.0.1", 0, "127.0.0.1", target.sockets[0].getsockname()[1])
                reader, writer = await asyncio.open_connection("127.0.0.1", listener.get_port())
                payload = os.urandom(1 << 20)
                writer.write(payload)
                writer.write_eof()
                assert await reader.read() == payload
                writer.close()
                listener.close()
        finally:
            target.close()
            server.close()
            await server.wait_closed()

    runner.run(main())
