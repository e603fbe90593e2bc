package hreg

import (
	"errors"
	"strings"
	"testing"
)

// A uid's sessions hold at most --uid-max-references entries together (an
// entry per session and object): past it, INSERT and RETAIN are ErrQuota
// naming the limit.
func TestReferencesPastTheUidCapNameTheLimit(t *testing.T) {
	d := startDaemon(t, "--uid-max-references", "3")
	c := d.client(t)
	var handles []Handle
	for i := 0; i < 3; i++ {
		h, err := c.Insert([]byte("r"), Shared)
		if err != nil {
			t.Fatal(err)
		}
		handles = append(handles, h)
	}
	// A DETACHED object takes no reference; retaining it would.
	kept, err := c.Insert([]byte("k"), Detached)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Retain(kept)
	if !errors.Is(err, ErrQuota) || !strings.Contains(err.Error(), "uid_max_references") {
		t.Fatalf("retain past --uid-max-references 3: %v", err)
	}
	_, err = c.Insert([]byte("x"), 0)
	if !errors.Is(err, ErrQuota) || !strings.Contains(err.Error(), "uid_max_references") {
		t.Fatalf("insert past --uid-max-references 3: %v", err)
	}
	// An entry given back makes room.
	if err := c.Release(handles[0]); err != nil {
		t.Fatal(err)
	}
	if err := c.Retain(kept); err != nil {
		t.Fatalf("retain with room again: %v", err)
	}
}
