// One module, this folder: the app is small enough that a separate app/ project would only add files.
// Built on GitHub's runners only (.github/workflows/android.yml); the project's machines reach neither
// Google's Maven nor an Android SDK.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "handheld-chat"
