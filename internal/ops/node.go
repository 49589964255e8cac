package ops

// Unreadable reports a primary that can be neither read nor found by its
// address: there is no instance to fence (only --force-unknown plans it).
// Plans journaled before it had no ID named it "unknown".
func (n Node) Unreadable() bool { return n.Unknown != "" && (n.ID == "" || n.ID == "unknown") }
