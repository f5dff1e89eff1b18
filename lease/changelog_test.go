package lease

import (
	"slices"
	"testing"
)

func TestChangeLogSince(t *testing.T) {
	var c changeLog
	if _, next, full := c.since(0); full || next != 0 {
		t.Fatalf("empty log: next %d full %v", next, full)
	}
	c.reset() // the first list
	keys, gen, full := c.since(0)
	if !full || keys != nil {
		t.Fatalf("a consumer from before the list must start over: %v %v", keys, full)
	}
	c.add("a")
	c.add("b")
	c.add("a")
	keys, gen2, full := c.since(gen)
	if full || !slices.Equal(keys, []string{"a", "b"}) {
		t.Fatalf("since the list: %v full=%v, want [a b] once each", keys, full)
	}
	if keys, _, full := c.since(gen2); full || len(keys) != 0 {
		t.Fatalf("nothing new: %v %v", keys, full)
	}
	c.add("c")
	if keys, _, _ := c.since(gen2); !slices.Equal(keys, []string{"c"}) {
		t.Fatalf("one more: %v", keys)
	}
	c.reset()
	if _, _, full := c.since(gen2); !full {
		t.Fatal("a relist must make every consumer start over")
	}
}

func TestChangeLogBounded(t *testing.T) {
	var c changeLog
	c.reset()
	_, gen, _ := c.since(0)
	for range 3 * maxChangeLog {
		c.add("k")
	}
	if len(c.keys) > maxChangeLog {
		t.Fatalf("log holds %d keys, bound is %d", len(c.keys), maxChangeLog)
	}
	if _, _, full := c.since(gen); !full {
		t.Fatal("a consumer behind the kept window must start over")
	}
	_, recent, _ := c.since(c.next() - 1)
	if keys, _, full := c.since(recent - 1); full || !slices.Equal(keys, []string{"k"}) {
		t.Fatalf("a recent consumer: %v %v", keys, full)
	}
}
