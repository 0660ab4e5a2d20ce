"""A real Debian mosquitto as a reference, for the security tests.

`RefMosquitto(scratch, extra_conf)` writes a config with a listener on a free
127.0.0.1 port plus the given lines, starts mosquitto as the current user,
waits (bounded) until it accepts connections, and `stop()` ends it.
"""

import os
import pwd
import socket
import subprocess
import time

from conftest import MOSQUITTO_BIN, free_port


class RefMosquitto:
    def __init__(self, scratch, extra_conf):
        self.port = free_port()
        conf = os.path.join(scratch, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\n"
                    # Run as ourselves: files are 0600 in a 0700 directory.
                    f"user {pwd.getpwuid(os.getuid()).pw_name}\n" + extra_conf)
        self.log = open(os.path.join(scratch, "mosquitto.log"), "w+")
        self.proc = subprocess.Popen([MOSQUITTO_BIN, "-c", conf], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            assert self.proc.poll() is None, self.read_log()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not listen"
                time.sleep(0.05)

    def read_log(self):
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
