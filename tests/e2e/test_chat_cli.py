"""``pigeon-chat`` driven as a person would: two processes in pseudo-terminals (pexpect)
against a real relay. They register, become contacts, chat both ways (with statuses up
to "read"), compare safety numbers, search and page history; ``/help`` lists every
command; bad input gets a clear message and the program goes on; ``/quit`` exits 0.
Every expect is bounded."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from client_sdk.testing import RelayProcess, pigeon_relay, start_relay  # noqa: F401
from examples.chat.syntax import COMMANDS
from examples.local_relay import relay_command

from .test_sdk_tls import _self_signed

EXPECT_TIMEOUT_S = 20
SAFETY = r"((?:\d{5} ){11}\d{5})"


def _chat_command() -> list[str]:
    script = shutil.which("pigeon-chat", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "examples.chat"]


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")


class Chat:
    """One pigeon-chat process in a pty."""

    def __init__(self, name: str, profile: Path, relay_url: str | None, *,
                 passphrase: str | None = "correct horse battery staple",
                 pin: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PIGEON_PASSPHRASE"}
        env.update(TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1", COLUMNS="200",
                   LINES="50")
        if passphrase is not None:
            env["PIGEON_PASSPHRASE"] = passphrase
        command = _chat_command()
        options = ["--tls-pin", pin] if pin is not None else []
        if relay_url is not None:
            options += ["--relay", relay_url]
        self.name = name
        self.proc = pexpect.spawn(
            command[0], [*command[1:], "--profile", str(profile), *options],
            env=env, encoding="utf-8", codec_errors="replace", dimensions=(50, 200),
            timeout=EXPECT_TIMEOUT_S)
        self.transcript: list[str] = []

    def expect(self, text: str) -> str:
        """Wait for *text*; return what came before it. On a timeout the failure shows
        what this chat printed meanwhile (escape codes removed)."""
        try:
            self.proc.expect_exact(text)
        except pexpect.TIMEOUT:
            seen = _ANSI.sub("", str(self.proc.before or ""))[-3000:]
            raise AssertionError(f"{self.name}'s chat never showed {text!r}; it showed:\n"
                                 f"{seen}") from None
        assert isinstance(self.proc.before, str)
        self.transcript.append(self.proc.before + text)
        return self.proc.before

    def expect_re(self, pattern: str) -> re.Match[str]:
        try:
            self.proc.expect(pattern)
        except pexpect.TIMEOUT:
            seen = _ANSI.sub("", str(self.proc.before or ""))[-3000:]
            raise AssertionError(f"{self.name}'s chat never matched {pattern!r}; it "
                                 f"showed:\n{seen}") from None
        match = self.proc.match
        assert isinstance(match, re.Match)
        return match

    def type(self, line: str) -> None:
        self.proc.send(line + "\r")

    def quit(self) -> int:
        self.type("/quit")
        self.proc.expect(pexpect.EOF)
        self.proc.close()
        status: int = self.proc.exitstatus
        return status

    def kill(self) -> None:
        if self.proc.isalive():
            self.proc.terminate(force=True)


@pytest.fixture
def chats(pigeon_relay: RelayProcess, tmp_path: Path) -> Iterator[dict[str, Chat]]:  # noqa: F811
    started: dict[str, Chat] = {}
    try:
        for name in ("alice", "bob"):
            started[name] = Chat(name, tmp_path / f"{name}.pigeon", pigeon_relay.url)
        yield started
    finally:
        for chat in started.values():
            chat.kill()


def _register(chat: Chat, display: str, *, greeted: bool = False) -> tuple[str, str]:
    if not greeted:
        chat.expect("This profile has no account yet")
    chat.type("/register")
    account = chat.expect_re(r"registered: account ([0-9a-f]{32})").group(1)
    link = chat.expect_re(r"others add you with: /add (pigeon://\S+)").group(1)
    chat.type(f"/name {display}")
    chat.expect(f"your display name is now {display}")
    return account, link


def test_two_people_chat(chats: dict[str, Chat], pigeon_relay: RelayProcess,  # noqa: F811
                         ) -> None:
    alice, bob = chats["alice"], chats["bob"]

    # Before registering: help, and bad input that must not end the program.
    alice.expect("This profile has no account yet")
    alice.type("/help")
    listing = alice.expect("Other lines are messages to the open conversation.")
    for spec in COMMANDS:
        assert spec.usage in listing, spec.usage
    alice.type("/help verify")
    alice.expect("Type the 60 digits the other side reads to you")
    alice.type("/frobnicate now")
    alice.expect("error: unknown command /frobnicate: /help lists the commands")
    alice.type("/contacts")
    alice.expect("error: this profile has no account yet: /register first")
    alice.type("hello?")
    alice.expect("error: no conversation open")
    alice.type("/help nosuch")
    alice.expect("error: no command /nosuch")

    alice_id, _ = _register(alice, "Alice", greeted=True)
    bob_id, bob_link = _register(bob, "Bob")
    assert alice_id != bob_id

    alice.type("/add not-an-address")
    alice.expect("error: expected an account id (32 hex digits), @username or a "
                 "pigeon://contact/ link")
    alice.type("/open")
    alice.expect("error: usage: /open <contact>")
    alice.type("/open nobody")
    alice.expect("error: no contact matches 'nobody'")

    # Alice invites Bob by his link; Bob sees the invitation and accepts it.
    alice.type(f"/add {bob_link}")
    alice.expect(f"invitation sent to {bob_id}")
    bob.expect(f"Alice ({alice_id}) wants to be your contact")
    bob.type("/invites")
    bob.expect(f"Alice ({alice_id}) invited you")
    bob.type("/accept")
    bob.expect("you and Alice are now contacts")
    bob.expect("── conversation with Alice ──")
    alice.expect("accepted your invitation")
    alice.type("/contacts")
    alice.expect_re(rf"1\. Bob +{bob_id}  contact")
    alice.type("/open bob")
    alice.expect("── conversation with Bob ──")

    # Messages both ways; Bob has the conversation open, so Alice's is read at once.
    alice.type("hello from alice")
    bob.expect("Alice: hello from alice")
    alice.expect('"hello from alice": read')
    bob.type("hi alice, bob here")
    alice.expect("Bob: hi alice, bob here")
    bob.expect('"hi alice, bob here": read')

    # The same safety number on both sides; verifying checks it.
    alice.type("/safety")
    number = alice.expect_re(r"safety number with Bob \(not verified\):\s+" + SAFETY).group(1)
    bob.type("/safety")
    assert bob.expect_re(r"safety number with Alice \(not verified\):\s+"
                         + SAFETY).group(1) == number
    alice.type("/verify 12345")
    alice.expect("error: a safety number is 60 digits (spaces allowed)")
    wrong = ("1" if number[0] != "1" else "2") + number[1:]
    alice.type(f"/verify {wrong}")
    alice.expect("that is NOT your safety number with Bob: not verified")
    alice.type(f"/verify {number}")
    alice.expect("Bob is verified: the safety numbers match")
    alice.type("/safety")
    alice.expect("safety number with Bob (verified)")

    # History and search.
    alice.type("/search bob here")
    alice.expect("1 message(s) with 'bob here'")
    alice.expect("Bob: hi alice, bob here")
    alice.type("/search nothing-like-this")
    alice.expect("nothing found for 'nothing-like-this'")
    alice.type("/history")
    lines = alice.expect("Bob: hi alice, bob here")
    assert re.search(r"#[0-9a-f]{6} you: hello from alice  \[read\]", lines), lines
    alice.type("/history many")
    alice.expect("error: usage: /history [count]")

    # Disappearing messages: the timer is set for both sides.
    alice.type("/disappear 1h")
    alice.expect("new messages with Bob disappear 1h after they arrive (for both of you)")
    bob.expect("Alice set new messages to disappear after 1h (for both of you)")
    alice.type("/disappear off")
    alice.expect("messages with Bob are kept again (for both of you)")
    bob.expect("Alice keeps messages again (for both of you)")
    alice.type("/disappear 1y")
    alice.expect("error: '1y' is not a duration: use e.g. 30s, 5m, 1h, 7d, 2w or off")

    # Still alive after all the errors. The relay goes down: a message typed meanwhile is
    # stored and goes out once it is back.
    pigeon_relay.kill()
    alice.expect("offline (")
    bob.expect("offline (")
    alice.type("still here")
    alice.expect("stored: it goes out when the relay is reachable again")
    pigeon_relay.restart()
    alice.expect("connected to the relay")
    bob.expect("Alice: still here")
    alice.expect('"still here": read')
    assert alice.quit() == 0
    assert bob.quit() == 0


def test_send_and_get_a_file(chats: dict[str, Chat], tmp_path: Path) -> None:
    alice, bob = chats["alice"], chats["bob"]
    _, bob_link = _register(bob, "Bob")
    _register(alice, "Alice")
    alice.type(f"/add {bob_link}")
    alice.expect("invitation sent to")
    bob.expect("wants to be your contact")
    bob.type("/accept")
    bob.expect("── conversation with Alice ──")
    alice.expect("accepted your invitation")
    alice.type("/open Bob")
    alice.expect("── conversation with Bob ──")
    alice.type(f"/send {tmp_path / 'missing.bin'}")
    alice.expect(f"error: no file at {tmp_path / 'missing.bin'}")
    payload = os.urandom(3 * 1024 * 1024 + 123)
    source = tmp_path / "photo.bin"
    source.write_bytes(payload)
    alice.type(f"/send {source}")
    alice.expect("sent photo.bin (3.1 MB) to Bob")
    file_id = bob.expect_re(r"Alice sent a file photo\.bin \(3\.1 MB\)  "
                            r"\(/get (#[0-9a-f]{6}) <dest>\)").group(1)
    bob.type("/get #zz /tmp")
    bob.expect("error: name the message by the #id shown with it")
    bob.type(f"/get {file_id} {tmp_path / 'no-such-folder' / 'x'}")
    bob.expect("error: no folder")
    # A folder as destination: the file keeps its name (a new one ending in / is made).
    downloads = tmp_path / "downloads"
    bob.type(f"/get {file_id} {downloads}/")
    bob.expect(f"saved {file_id} to {downloads / 'photo.bin'} (3.1 MB)")
    assert (downloads / "photo.bin").read_bytes() == payload
    bob.type(f"/get {file_id} {downloads}")
    bob.expect("exists already: choose another name")
    bob.type("/history")
    bob.expect_re(r"#[0-9a-f]{6} Alice: \[file\] photo\.bin \(3\.1 MB\)")
    alice.type("/history")
    alice.expect_re(r"#[0-9a-f]{6} you: \[file\] photo\.bin \(3\.1 MB\)  \[(delivered|read)\]")
    assert alice.quit() == 0
    assert bob.quit() == 0


def test_passphrase_prompt_and_wrong_passphrase(pigeon_relay: RelayProcess,  # noqa: F811
                                                tmp_path: Path) -> None:
    profile = tmp_path / "carol.pigeon"
    secret = "carol's very secret passphrase"
    carol = Chat("carol", profile, pigeon_relay.url, passphrase=None)
    try:
        carol.expect("choose a passphrase:")
        carol.type(secret)
        carol.expect("repeat it:")
        carol.type(secret + " typo")
        carol.expect("the two passphrases differ")
        carol.expect("choose a passphrase:")
        carol.type(secret)
        carol.expect("repeat it:")
        carol.type(secret)
        carol.expect("This profile has no account yet")
        assert carol.quit() == 0
        assert secret not in "".join(carol.transcript)
    finally:
        carol.kill()

    wrong = Chat("carol", profile, pigeon_relay.url, passphrase="not it")
    try:
        wrong.expect(f"pigeon-chat: wrong passphrase for {profile}")
        wrong.proc.expect(pexpect.EOF)
        wrong.proc.close()
        assert wrong.proc.exitstatus == 1
    finally:
        wrong.kill()

    # Reopened without --relay, the unregistered profile still offers the default relay.
    again = Chat("carol", profile, None, passphrase=None)
    try:
        again.expect("passphrase:")
        again.type(secret)
        again.expect("This profile has no account yet: /register creates one on the relay "
                     "(http://127.0.0.1:8765)")
        assert again.quit() == 0
    finally:
        again.kill()


def test_pinned_tls_relay(tmp_path: Path) -> None:
    """``--tls-pin``: the right pin registers over wss://, a wrong one is refused with a
    clear message (and the chat goes on), a malformed one stops at start with status 1."""
    cert, key, fingerprint = _self_signed(tmp_path)
    relay = start_relay(tmp_path / "relay", ["--tls-cert", str(cert), "--tls-key", str(key)])
    chats: list[Chat] = []
    try:
        assert relay.url.startswith("https://")
        wrong = Chat("mallory", tmp_path / "m.pigeon", relay.url, pin="00" * 32)
        chats.append(wrong)
        wrong.type("/register")
        wrong.expect("error: the relay's TLS certificate does not match the pinned "
                     "fingerprint")
        wrong.type("/help quit")
        wrong.expect("leave pigeon-chat")
        assert wrong.quit() == 0

        right = Chat("dora", tmp_path / "d.pigeon", relay.url, pin=fingerprint.hex(":"))
        chats.append(right)
        right.type("/register")
        right.expect_re(r"registered: account [0-9a-f]{32}")
        assert right.quit() == 0

        broken = Chat("eve", tmp_path / "e.pigeon", relay.url, pin="not-hex")
        chats.append(broken)
        broken.expect("pigeon-chat: ")
        broken.proc.expect(pexpect.EOF)
        broken.proc.close()
        assert broken.proc.exitstatus == 1
    finally:
        for chat in chats:
            chat.kill()
        relay.kill()


def test_invite_only_relay(tmp_path: Path) -> None:
    folder = tmp_path / "relay"
    relay = start_relay(folder, ["--invite-only"])
    chat = None
    try:
        created = subprocess.run(
            [*relay_command(), "admin", "--data-dir", str(folder), "invite", "create"],
            capture_output=True, text=True, timeout=30, check=True)
        code = created.stdout.split()[-1]
        chat = Chat("frank", tmp_path / "f.pigeon", relay.url)
        chat.type("/register")
        chat.expect("error: this relay is invite-only: /register <invite-code>")
        chat.type("/register not-a-code")
        chat.expect("error: the relay refused that invite code")
        chat.type(f"/register {code}")
        chat.expect_re(r"registered: account [0-9a-f]{32}")
        assert chat.quit() == 0
    finally:
        if chat is not None:
            chat.kill()
        relay.kill()
