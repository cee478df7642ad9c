"""Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`):
a test types into a page's form, clicks its buttons and reads the DOM and the network requests,
with nothing but Debian's `chromium` and the standard library.

    with Browser(chromium_path, profile_dir) as browser:
        page = browser.new_page()
        page.navigate("http://127.0.0.1:8080/")
        page.wait_for("document.body.dataset.state === 'idle'")
        page.type_into("#query", "two horses")
        page.click("button[type=submit]")

Chromium reads protocol messages (JSON, each ended by a NUL byte) on its fd 3 and writes its
answers and events on fd 4. Every wait has a deadline; a page's JavaScript exception or a
protocol error raises with its message.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import subprocess
import time

DEFAULT_TIMEOUT = 60.0


class ProtocolError(RuntimeError):
    pass


class Browser:
    """One Chromium process; `new_page` opens a tab attached in flat mode (one session id per
    tab on the same pipe)."""

    def __init__(self, chromium: str, profile_dir: str, flags=()):
        to_chromium_read, to_chromium_write = os.pipe()
        from_chromium_read, from_chromium_write = os.pipe()
        # The child's ends above 4, so that putting them on fds 3 and 4 clobbers neither.
        child_read = fcntl.fcntl(to_chromium_read, fcntl.F_DUPFD, 10)
        child_write = fcntl.fcntl(from_chromium_write, fcntl.F_DUPFD, 10)
        os.close(to_chromium_read)
        os.close(from_chromium_write)
        # bash (sh takes single-digit fds only) puts them on fds 3 and 4 and execs chromium, so
        # no Python code runs between fork and exec (a preexec_fn would, beside JAX's threads).
        self.process = subprocess.Popen(
            [
                "/bin/bash",
                "-c",
                f'exec "$0" "$@" 3<&{child_read} 4>&{child_write} {child_read}<&- {child_write}>&-',
                chromium,
                *flags,
                "--remote-debugging-pipe",
                f"--user-data-dir={profile_dir}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(child_read, child_write),
        )
        os.close(child_read)
        os.close(child_write)
        self._write_fd, self._read_fd = to_chromium_write, from_chromium_read
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []  # every event received, in order

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.send("Browser.close", timeout=10)
            except (ProtocolError, OSError, TimeoutError):
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for descriptor in (self._write_fd, self._read_fd):
            try:
                os.close(descriptor)
            except OSError:
                pass

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from chromium before the deadline")
            ready, _, _ = select.select([self._read_fd], [], [], left)
            if ready:
                chunk = os.read(self._read_fd, 1 << 20)
                if not chunk:
                    raise ProtocolError(f"chromium closed its pipe (exit {self.process.poll()})")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> dict:
        """Sends one command and returns its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._receive(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise ProtocolError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            if "method" in answer:
                self.events.append(answer)

    def wait_event(self, method: str, session: str, since: int, timeout: float) -> dict:
        """The first event `method` of `session` at or after position `since` of `events`,
        reading more messages until it comes."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[since:]:
                if event["method"] == method and event.get("sessionId") == session:
                    return event
            since = len(self.events)
            message = self._receive(deadline)
            if "method" in message:
                self.events.append(message)

    def new_page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Network"):
            page.send(f"{domain}.enable")
        return page


class Page:
    """One tab: navigation, JavaScript, keyboard and mouse input, and its network requests."""

    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session

    def send(self, method: str, params: dict | None = None, timeout=DEFAULT_TIMEOUT) -> dict:
        return self.browser.send(method, params, self.session, timeout)

    def navigate(self, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Loads `url` and returns once its load event fired (its scripts have run)."""
        since = len(self.browser.events)
        answer = self.send("Page.navigate", {"url": url})
        if answer.get("errorText"):
            raise ProtocolError(f"navigating to {url}: {answer['errorText']}")
        self.browser.wait_event("Page.loadEventFired", self.session, since, timeout)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (promises awaited), as JSON gives it."""
        answer = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise ProtocolError(f"JavaScript {expression!r} raised: {text}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout: float = DEFAULT_TIMEOUT, interval=0.05):
        """Polls a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} was still {value!r} after {timeout} s")
            time.sleep(interval)

    def type_into(self, selector: str, text: str) -> None:
        """Focuses the element, selects what it holds and types `text` over it (keyboard
        input events, as a person typing would cause)."""
        self.evaluate(
            f"(() => {{ const box = document.querySelector({json.dumps(selector)}); "
            "box.focus(); box.select(); })()"
        )
        if text:
            self.send("Input.insertText", {"text": text})
        else:
            for kind in ("keyDown", "keyUp"):
                self.send(
                    "Input.dispatchKeyEvent",
                    {
                        "type": kind,
                        "key": "Backspace",
                        "code": "Backspace",
                        "windowsVirtualKeyCode": 8,
                    },
                )

    def click(self, selector: str) -> None:
        """A left mouse click at the centre of the element (it must be visible)."""
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1},
            )

    def requests(self, path: str) -> list[dict]:
        """The requests this tab sent to a URL ending in `path`: each {method, url, body,
        request_id} (body: the POST data or None), in the order sent."""
        found = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            if event["method"] != "Network.requestWillBeSent":
                continue
            request = event["params"]["request"]
            if request["url"].split("?")[0].endswith(path):
                found.append(
                    {
                        "method": request["method"],
                        "url": request["url"],
                        "body": request.get("postData"),
                        "request_id": event["params"]["requestId"],
                    }
                )
        return found

    def response_body(self, request_id: str) -> str:
        return self.send("Network.getResponseBody", {"requestId": request_id})["body"]
