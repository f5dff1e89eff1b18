package lease

// changeLog records which lease keys changed, in order, so a consumer can
// ask "what changed since I last looked" and work on those keys alone
// instead of the whole lease set. Positions are generations: a consumer
// keeps the generation it has seen up to. A relist (the set replaced as a
// whole) or a consumer that fell behind the kept window gets whole=true and
// must look at everything again.
type changeLog struct {
	start   uint64   // generation of keys[0]
	keys    []string // keys changed, oldest first
	resetAt uint64   // generation of the last relist
}

// maxChangeLog bounds the memory of the log; a consumer more than this many
// changes behind starts over from the whole set.
const maxChangeLog = 1 << 14

func (c *changeLog) add(key string) {
	c.keys = append(c.keys, key)
	if len(c.keys) > maxChangeLog {
		drop := len(c.keys) / 2
		c.keys = append([]string(nil), c.keys[drop:]...)
		c.start += uint64(drop)
	}
}

// reset marks the whole set as replaced.
func (c *changeLog) reset() {
	c.start = c.next() + 1
	c.keys = nil
	c.resetAt = c.start
}

func (c *changeLog) next() uint64 { return c.start + uint64(len(c.keys)) }

// since returns the distinct keys changed at or after generation gen, the
// generation to pass next time, and whole when the consumer must re-read
// everything (a relist happened or gen is older than the log).
func (c *changeLog) since(gen uint64) (keys []string, next uint64, whole bool) {
	next = c.next()
	if gen < c.resetAt || gen < c.start {
		return nil, next, true
	}
	if gen >= next {
		return nil, next, false
	}
	seen := make(map[string]bool, next-gen)
	for _, k := range c.keys[gen-c.start:] {
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	return keys, next, false
}
