package ops

// The names of the journaled steps that a pre-flight row stands for
// (Check.Steps). The step lists and the pre-flights take them from here:
// a resume weighs each row by whether its steps are done, by name, so a
// name must not differ between the two.
const (
	// A restore from EBS (rebuild, in place, from a completing point).
	stepImage        = "Make an image of the restore point"
	stepProtect      = "Protect the old volumes"
	stepStopOld      = "Stop the old instance"
	stepFreeIP       = "Free the private IP"
	stepLaunch       = "Launch the new Services box"
	stepCreateVols   = "Create the new volumes"
	stepStopBox      = "Stop the Services box"
	stepSwap         = "Swap the volumes"
	stepStartBox     = "Start the Services box"
	stepStartApp     = "Start the app"
	stepRebootBox    = "Reboot the Services box"
	stepWaitRebooted = "Wait until it has rebooted"

	// A failover.
	stepFence       = "Fence the old primary"
	stepStartRep    = "Start the replica instance"
	stepMoveAddress = "Move the service address"
	stepOSAddress   = "Configure the service address in the replica's OS"
	stepNameTag     = "Hand over the Name tag"
	stepAppReplica  = "Start the app on the replica"
	stepRotate      = "Rotate the builders"

	// A restore from a tarball.
	stepCheckBox   = "Check the Services box"
	stepDownload   = "Download the tarball onto the box"
	stepStopApp    = "Stop the app"
	stepRunRestore = "Run circleci-restore"
	stepRmTarball  = "Remove the downloaded tarball"
)

// resizeTypeStep is the name of a resize's type change.
func resizeTypeStep(to string) string { return "Set the instance type to " + to }
