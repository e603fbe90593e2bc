// Every client words a failure alike (README.md, "Errors"): the sentinels
// say what hreg_strerror says, and the details libhreg knows (the size and
// the limit, the paths tried) replace them in the message.

package hreg

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestSentinelsSayWhatHregStrerrorSays(t *testing.T) {
	for status := 1; status < len(byStatus); status++ {
		want := "hreg: " + strerror(status)
		if got := byStatus[status].Error(); got != want {
			t.Errorf("status %d: %q, hreg_strerror says %q", status, got, want)
		}
	}
}

func TestMessagesNameWhatHappened(t *testing.T) {
	d := startDaemon(t, "--max-value-size", "100")
	c := d.client(t)
	_, err := c.Get(12345)
	want := "hreg: get 12345: no such object (removed, or never issued by this daemon)"
	if !errors.Is(err, ErrStale) || err.Error() != want {
		t.Errorf("stale: %v, want %q", err, want)
	}
	_, err = c.Insert(make([]byte, 101), 0)
	want = "hreg: insert: value too big: 101 bytes, over the daemon's max_value_size of 100"
	if !errors.Is(err, ErrTooBig) || err.Error() != want {
		t.Errorf("too big: %v, want %q", err, want)
	}
	path := filepath.Join(t.TempDir(), "nothing.sock")
	_, err = Connect(path)
	want = "hreg: connect: cannot connect to hregd at " + path +
		": no socket there (is hregd running, and serving this path?)"
	if !errors.Is(err, ErrConnect) || err.Error() != want {
		t.Errorf("connect: %v, want %q", err, want)
	}
	if strings.Contains(err.Error(), "os error") {
		t.Errorf("Rust internals in %q", err)
	}
}
